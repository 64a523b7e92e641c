"""Guidance from the frames alone (image + known C-arm geometry), downstream of ``fluoro``.

* ``needle``        -- ``detect_needle``, ``NeedleTracker``: line, tip, angle, confidence;
* ``levels``        -- ``detect_levels``: interspaces (endplate lines) and their names, AP and
                       lateral; ``transfer_names`` from a lateral to an AP;
* ``naming``        -- the small interspace-naming model (trained by ``train_levels``);
* ``interspace``    -- anterior/middle/posterior disc heights in mm at the isocentre,
                       ``InterspaceTracker``, ``change_from_baseline``;
* ``depth``         -- triangulation from two views, epipolar lines, distance to the sac;
* ``puncture``      -- ``PunctureGuide``: lumbar-puncture guidance per frame;
* ``decompression`` -- ``DecompressionMonitor`` and ``verdict``;
* ``overlay``       -- ``draw_overlay`` for the console and the cine;
* ``cases``/``evaluate`` -- seeded evaluation cases and ``openfluoro evaluate guidance``.
"""
