"""View: where output is shown -- the driver's client, aggregation, records, sinks.

``_client`` (LoggingMeshClient, open_logging_client) is served by a mesh through the seam in
``_port``; ``_decode`` turns frames into ``_records``, ``_aggregate`` folds them, ``_sinks``
write them (off the event loop, with ``_writer``).  It never imports the host.
"""
