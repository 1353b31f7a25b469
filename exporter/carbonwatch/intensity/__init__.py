"""Grid carbon intensity: the providers, the background feed (and the fleet feed between instances), the
exporter's intensity collector and `carbonwatch intensity`."""
