"""Benchmarks of rx-discovery against the raw ``etcd3`` client, side by side in one run.

``python -m bench`` starts its own :class:`~rx_discovery.embedded.EmbeddedEtcd`, runs every
measurement on rx-discovery and on the raw client, prints a table and writes
``bench/results/latest.json``. ``--quick`` uses small sizes (CI), ``--only NAME`` runs one
benchmark, ``--out PATH`` writes the JSON elsewhere. Targets are goals shown in the table;
nothing is asserted.
"""
