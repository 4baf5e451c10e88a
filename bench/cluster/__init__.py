"""Beyond one machine: hosts made of network namespaces, and suites run on a Dask cluster."""
