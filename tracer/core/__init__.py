"""The leaf of tracer: what every other package builds on, importing nothing of ours.

Wire decoding of the ring-buffer records (decode), the event types every
exporter receives (events), clocks, kernel numbers to names, text from
kernel bytes, terminal escaping, and the libbpf binding with the loader
and probe that use it.
"""
