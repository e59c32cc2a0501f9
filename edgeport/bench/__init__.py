"""``edgeport bench``: latency, throughput, memory and parity of several variants measured
side by side, JSON and HTML reports, and ``bench compare``.  Receives runners; never
imports export."""
