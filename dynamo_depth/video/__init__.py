"""Your own camera and video as a source of shards: COLMAP camera models (``cameras``), undistortion to a
pinhole with the crop / resize rule (``rectify``), and video / image-sequence frames with exact timestamps
(``frames``). Used by ``builders.video`` to build shards and by ``dynamo_depth.predict`` to read videos.
"""
