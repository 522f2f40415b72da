"""The batch keys every layer speaks: LeRobot's flat names, defined once.

A raw observation (robot or dataset) and a model-space batch use the same keys; only their values differ (uint8
frames vs float images, robot units vs normalized, a task string vs token ids).
"""

STATE_KEY = "observation.state"
ACTION_KEY = "action"
TASK_KEY = "task"
IMAGE_PREFIX = "observation.images."
# Cameras a checkpoint was trained with but a robot does not have: filled with constant images nothing attends to.
EMPTY_CAMERA_PREFIX = "observation.images.empty_camera_"
LANG_TOKENS = "observation.language.tokens"
LANG_MASK = "observation.language.attention_mask"
ACTION_IS_PAD = "action_is_pad"
PADDING_MASK_SUFFIX = "_padding_mask"  # `<camera>_padding_mask` (B,) bool: which samples have that camera
# Several robots in one run (mixed-embodiment training): `action_dim_is_pad` (B, action_dim) bool marks the action
# dims a sample's robot does not have (zero padding the loss skips); `embodiment_index` (B,) which robot a row is.
ACTION_DIM_IS_PAD = "action_dim_is_pad"
EMBODIMENT_INDEX = "embodiment_index"
