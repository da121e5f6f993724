"""The driver's side of a run over many hosts: it accepts host agents over TLS and presents
them to the view as one mesh (``_mesh.open_host_mesh``); ``_launchers`` starts the agents
(ssh, SLURM's srun, or processes on this machine)."""
