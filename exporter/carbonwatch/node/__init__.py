"""The node exporter: sources behind typed interfaces, run identity, the sampler and its per-component
meters, the durable counters, the collector and the HTTP side."""
