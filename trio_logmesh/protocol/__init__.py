"""Protocol: the frames and the control channel, the same on every side.

``_wire`` (layout and codec) and ``_control`` (the control channel, sans I/O) are standard
library only: children load them by path.  ``_frames`` (the data frames, attrs classes) is
loaded by hosts and views only.
"""
