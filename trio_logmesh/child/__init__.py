"""Child: what runs inside each Python child (standard library only; see ``_logmesh_agent``)."""
