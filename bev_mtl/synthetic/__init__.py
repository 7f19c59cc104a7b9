"""A procedural driving world written to disk in the exact nuScenes format.

Modules: ``world`` (shared types), ``town`` (road network and map layers), ``actors``
(objects and their motion), ``parts``/``raycast``/``textures``/``render_camera``/
``render_lidar`` (sensors), ``rigs`` (camera rigs), ``map_writer`` and ``tables`` (on-disk
format), ``generate`` (orchestration used by ``tools/create_data.py synthetic``).
"""
