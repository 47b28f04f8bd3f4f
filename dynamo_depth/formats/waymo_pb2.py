"""Message classes for ``waymo.proto``, built from a ``FileDescriptorProto`` in Python (no protoc).

``_MESSAGES`` and ``_TOP_ENUMS`` below mirror ``waymo.proto`` one to one (``tests/test_formats_waymo.py``
parses the .proto text and checks names, labels, types, numbers and packing agree). The classes live
in a private descriptor pool, so importing the official ``waymo_open_dataset`` package beside this
module causes no name clash.
"""

from __future__ import annotations

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

PACKAGE = "waymo.open_dataset"
PROTO_FILE = "dynamo_depth/formats/waymo.proto"

_F = descriptor_pb2.FieldDescriptorProto
_SCALARS = {
    "double": _F.TYPE_DOUBLE, "float": _F.TYPE_FLOAT, "int64": _F.TYPE_INT64, "int32": _F.TYPE_INT32,
    "bool": _F.TYPE_BOOL, "string": _F.TYPE_STRING, "bytes": _F.TYPE_BYTES,
}
_LABELS = {"optional": _F.LABEL_OPTIONAL, "repeated": _F.LABEL_REPEATED}

# Enums: full name (relative to the package) -> ((value name, number), ...).
_ENUMS: dict[str, tuple[tuple[str, int], ...]] = {
    "CameraName.Name": (("UNKNOWN", 0), ("FRONT", 1), ("FRONT_LEFT", 2), ("FRONT_RIGHT", 3),
                        ("SIDE_LEFT", 4), ("SIDE_RIGHT", 5)),
    "LaserName.Name": (("UNKNOWN", 0), ("TOP", 1), ("FRONT", 2), ("SIDE_LEFT", 3), ("SIDE_RIGHT", 4),
                       ("REAR", 5)),
    "CameraCalibration.RollingShutterReadOutDirection": (
        ("UNKNOWN", 0), ("TOP_TO_BOTTOM", 1), ("LEFT_TO_RIGHT", 2), ("BOTTOM_TO_TOP", 3),
        ("RIGHT_TO_LEFT", 4), ("GLOBAL_SHUTTER", 5)),
    "Label.Box.Type": (("TYPE_UNKNOWN", 0), ("TYPE_3D", 1), ("TYPE_2D", 2), ("TYPE_AA_2D", 3)),
    "Label.Type": (("TYPE_UNKNOWN", 0), ("TYPE_VEHICLE", 1), ("TYPE_PEDESTRIAN", 2), ("TYPE_SIGN", 3),
                   ("TYPE_CYCLIST", 4)),
    "Label.DifficultyLevel": (("UNKNOWN", 0), ("LEVEL_1", 1), ("LEVEL_2", 2)),
}

# Messages: full name -> ((label, type, field name, number, packed), ...). Types that are not scalars
# are full names of messages or enums above. Nested messages are those whose name has a dot.
_MESSAGES: dict[str, tuple[tuple[str, str, str, int, bool], ...]] = {
    "MatrixShape": (("repeated", "int32", "dims", 1, False),),
    "MatrixFloat": (("repeated", "float", "data", 1, True), ("optional", "MatrixShape", "shape", 2, False)),
    "MatrixInt32": (("repeated", "int32", "data", 1, True), ("optional", "MatrixShape", "shape", 2, False)),
    "CameraName": (),
    "LaserName": (),
    "Transform": (("repeated", "double", "transform", 1, False),),
    "Velocity": tuple(("optional", kind, name, number, False) for kind, name, number in (
        ("float", "v_x", 1), ("float", "v_y", 2), ("float", "v_z", 3),
        ("double", "w_x", 4), ("double", "w_y", 5), ("double", "w_z", 6))),
    "CameraCalibration": (
        ("optional", "CameraName.Name", "name", 1, False), ("repeated", "double", "intrinsic", 2, False),
        ("optional", "Transform", "extrinsic", 3, False), ("optional", "int32", "width", 4, False),
        ("optional", "int32", "height", 5, False),
        ("optional", "CameraCalibration.RollingShutterReadOutDirection", "rolling_shutter_direction", 6, False)),
    "LaserCalibration": (
        ("optional", "LaserName.Name", "name", 1, False), ("repeated", "double", "beam_inclinations", 2, False),
        ("optional", "double", "beam_inclination_min", 3, False),
        ("optional", "double", "beam_inclination_max", 4, False),
        ("optional", "Transform", "extrinsic", 5, False)),
    "Context": (
        ("optional", "string", "name", 1, False),
        ("repeated", "CameraCalibration", "camera_calibrations", 2, False),
        ("repeated", "LaserCalibration", "laser_calibrations", 3, False),
        ("optional", "Context.Stats", "stats", 4, False)),
    "Context.Stats": (
        ("repeated", "Context.Stats.ObjectCount", "laser_object_counts", 1, False),
        ("optional", "string", "time_of_day", 2, False), ("optional", "string", "location", 3, False),
        ("optional", "string", "weather", 4, False),
        ("repeated", "Context.Stats.ObjectCount", "camera_object_counts", 5, False)),
    "Context.Stats.ObjectCount": (("optional", "Label.Type", "type", 1, False),
                                  ("optional", "int32", "count", 2, False)),
    "RangeImage": (("optional", "MatrixFloat", "range_image", 1, False),) + tuple(
        ("optional", "bytes", name, number, False) for name, number in (
            ("range_image_compressed", 2), ("camera_projection_compressed", 3),
            ("range_image_pose_compressed", 4), ("range_image_flow_compressed", 5),
            ("segmentation_label_compressed", 6))),
    "CameraSegmentationLabel": (
        ("optional", "int32", "panoptic_label_divisor", 1, False), ("optional", "bytes", "panoptic_label", 2, False),
        ("repeated", "CameraSegmentationLabel.InstanceIDToGlobalIDMapping", "instance_id_to_global_id_mapping", 3,
         False),
        ("optional", "string", "sequence_id", 4, False), ("optional", "bytes", "num_cameras_covered", 5, False)),
    "CameraSegmentationLabel.InstanceIDToGlobalIDMapping": (
        ("optional", "int32", "local_instance_id", 1, False), ("optional", "int32", "global_instance_id", 2, False),
        ("optional", "bool", "is_tracked", 3, False)),
    "CameraImage": (
        ("optional", "CameraName.Name", "name", 1, False), ("optional", "bytes", "image", 2, False),
        ("optional", "Transform", "pose", 3, False), ("optional", "Velocity", "velocity", 4, False),
        ("optional", "double", "pose_timestamp", 5, False), ("optional", "double", "shutter", 6, False),
        ("optional", "double", "camera_trigger_time", 7, False),
        ("optional", "double", "camera_readout_done_time", 8, False),
        ("optional", "CameraSegmentationLabel", "camera_segmentation_label", 10, False)),
    "Label": (
        ("optional", "Label.Box", "box", 1, False), ("optional", "Label.Metadata", "metadata", 2, False),
        ("optional", "Label.Type", "type", 3, False), ("optional", "string", "id", 4, False),
        ("optional", "Label.DifficultyLevel", "detection_difficulty_level", 5, False),
        ("optional", "Label.DifficultyLevel", "tracking_difficulty_level", 6, False),
        ("optional", "int32", "num_lidar_points_in_box", 7, False),
        ("optional", "string", "most_visible_camera_name", 11, False),
        ("optional", "Label.Box", "camera_synced_box", 12, False),
        ("optional", "int32", "num_top_lidar_points_in_box", 13, False)),
    "Label.Box": tuple(("optional", "double", name, number, False) for name, number in (
        ("center_x", 1), ("center_y", 2), ("center_z", 3), ("width", 4), ("length", 5), ("height", 6),
        ("heading", 7))),
    "Label.Metadata": tuple(("optional", "double", name, number, False) for name, number in (
        ("speed_x", 1), ("speed_y", 2), ("accel_x", 3), ("accel_y", 4), ("speed_z", 5), ("accel_z", 6))),
    "CameraLabels": (("optional", "CameraName.Name", "name", 1, False), ("repeated", "Label", "labels", 2, False)),
    "Laser": (("optional", "LaserName.Name", "name", 1, False), ("optional", "RangeImage", "ri_return1", 2, False),
              ("optional", "RangeImage", "ri_return2", 3, False)),
    "Frame": (
        ("optional", "Context", "context", 1, False), ("optional", "int64", "timestamp_micros", 2, False),
        ("optional", "Transform", "pose", 3, False), ("repeated", "CameraImage", "images", 4, False),
        ("repeated", "Laser", "lasers", 5, False), ("repeated", "Label", "laser_labels", 6, False),
        ("repeated", "CameraLabels", "camera_labels", 8, False),
        ("repeated", "CameraLabels", "projected_lidar_labels", 9, False)),
}


def _add_field(message: descriptor_pb2.DescriptorProto, spec: tuple[str, str, str, int, bool]) -> None:
    label, kind, name, number, packed = spec
    field = message.field.add(name=name, number=number, label=_LABELS[label])
    if kind in _SCALARS:
        field.type = _SCALARS[kind]
    else:
        field.type = _F.TYPE_ENUM if kind in _ENUMS else _F.TYPE_MESSAGE
        field.type_name = f".{PACKAGE}.{kind}"
    if packed:
        field.options.packed = True


def build_file_descriptor() -> descriptor_pb2.FileDescriptorProto:
    """The ``FileDescriptorProto`` of ``waymo.proto``, built from the tables above."""
    file_proto = descriptor_pb2.FileDescriptorProto(name=PROTO_FILE, package=PACKAGE, syntax="proto2")
    built: dict[str, descriptor_pb2.DescriptorProto] = {}
    for full_name, fields in _MESSAGES.items():  # parents are listed before their nested messages
        parent, _, short = full_name.rpartition(".")
        container = built[parent].nested_type if parent else file_proto.message_type
        message = container.add(name=short)
        built[full_name] = message
        for spec in fields:
            _add_field(message, spec)
    for full_name, values in _ENUMS.items():
        parent, _, short = full_name.rpartition(".")
        enum = built[parent].enum_type.add(name=short) if parent else file_proto.enum_type.add(name=short)
        for value_name, number in values:
            enum.value.add(name=value_name, number=number)
    return file_proto


_POOL = descriptor_pool.DescriptorPool()
_POOL.Add(build_file_descriptor())


def _message_class(name: str) -> type:
    return message_factory.GetMessageClass(_POOL.FindMessageTypeByName(f"{PACKAGE}.{name}"))


MatrixShape = _message_class("MatrixShape")
MatrixFloat = _message_class("MatrixFloat")
MatrixInt32 = _message_class("MatrixInt32")
CameraName = _message_class("CameraName")
LaserName = _message_class("LaserName")
Transform = _message_class("Transform")
Velocity = _message_class("Velocity")
CameraCalibration = _message_class("CameraCalibration")
LaserCalibration = _message_class("LaserCalibration")
Context = _message_class("Context")
RangeImage = _message_class("RangeImage")
CameraSegmentationLabel = _message_class("CameraSegmentationLabel")
CameraImage = _message_class("CameraImage")
Label = _message_class("Label")
CameraLabels = _message_class("CameraLabels")
Laser = _message_class("Laser")
Frame = _message_class("Frame")
DESCRIPTOR = _POOL.FindFileByName(PROTO_FILE)
