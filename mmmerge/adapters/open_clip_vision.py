"""placeholder"""
FORMAT = "open_clip_vision"
DESCRIPTION = "open_clip_vision (not yet implemented)"


def detect(path):
    return False
