"""Layer 5: dask graphs over the archive: the ingest and detection stages, clusters, workers."""

from crscale.engine.cluster import dask_client, local_cluster_kwargs
from crscale.engine.detect_stage import DetectReport, ExposureDetection, detect_archive
from crscale.engine.ingest import IngestReport, IngestResult, ingest
from crscale.engine.pipeline import RunReport, run_pipeline

__all__ = [
    "DetectReport",
    "ExposureDetection",
    "IngestReport",
    "IngestResult",
    "RunReport",
    "dask_client",
    "detect_archive",
    "ingest",
    "local_cluster_kwargs",
    "run_pipeline",
]
