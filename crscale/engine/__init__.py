"""Layer 5: dask graphs over the archive (ingest now; detection and catalogue later)."""

from crscale.engine.cluster import dask_client, local_cluster_kwargs
from crscale.engine.ingest import IngestReport, IngestResult, ingest

__all__ = ["IngestReport", "IngestResult", "dask_client", "ingest", "local_cluster_kwargs"]
