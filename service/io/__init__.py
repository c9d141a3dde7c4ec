"""Reading inputs and writing outputs, shared by ``calmfirst score`` and ``calmfirst qa``."""
