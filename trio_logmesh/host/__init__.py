"""Host: where the ranks run -- processes, pipes, files, outboxes, the agent channel.

``_mesh`` (open_proc_mesh, the BootstrapProcManager) owns a nursery with one ``_rank`` task per
child (reading its pipes with ``_stream``'s StreamFwders, splitting lines with ``_lines``, into
its ``_outbox``), the ``_agents`` listener on BOOTSTRAP_LOG_CHANNEL, and ``_forwarder``'s
LogForwardActors, which hand each rank's frames to the view.  It never imports the view.
"""
