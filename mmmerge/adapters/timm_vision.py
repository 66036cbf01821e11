"""placeholder"""
FORMAT = "timm_vision"
DESCRIPTION = "timm_vision (not yet implemented)"


def detect(path):
    return False
