"""Layer 5: Dask graphs over the archive: the stages, the pipeline, the cluster.

The public surface is what :data:`__all__` names (documented in docs/api.md); modules and
names starting with ``_`` are internal.
"""

from crscale.engine.catalogue_stage import CatalogueReport, ExposureCatalogue, catalogue_archive
from crscale.engine.cluster import dask_client, local_cluster_kwargs
from crscale.engine.defects_stage import DefectReport, set_user_map, update_defects
from crscale.engine.detect_stage import DetectReport, ExposureDetection, detect_archive
from crscale.engine.ingest import IngestReport, IngestResult, ingest
from crscale.engine.pipeline import PIPELINE_STAGES, RunReport, run_pipeline
from crscale.engine.write_fits_stage import WriteFitsReport, write_fits_archive

__all__ = [
    "PIPELINE_STAGES",
    "CatalogueReport",
    "DefectReport",
    "DetectReport",
    "ExposureCatalogue",
    "ExposureDetection",
    "IngestReport",
    "IngestResult",
    "RunReport",
    "WriteFitsReport",
    "catalogue_archive",
    "dask_client",
    "detect_archive",
    "ingest",
    "local_cluster_kwargs",
    "run_pipeline",
    "set_user_map",
    "update_defects",
    "write_fits_archive",
]
