"""Building blocks of the procedural lumbar-spine phantom (see ``openfluoro.scene.phantom``).

* ``kernels``  -- compiled signed-distance primitives and the voxel painters;
* ``shapes``   -- the Python side of the primitives (frames, bounding boxes, groups);
* ``labels``   -- the label table and the tissue Hounsfield values with their sources;
* ``skeleton`` -- spine layout (one rigid pose per vertebra) and the bony parts;
* ``soft``     -- torso outline, muscles, organs, bowel and the spinal-canal contents.
"""
