"""A small, faithful fake Kubernetes API server for tests (see README.md here)."""

from .kinds import (
    GATEWAY_GROUP,
    ISTIO_GROUP,
    KINDS,
    SMI_SPECS_GROUP,
    SMI_SPLIT_GROUP,
    KindInfo,
)
from .server import FakeKube, RequestRecord
from .store import ApiError, Obj, merge_patch

__all__ = ["GATEWAY_GROUP", "ISTIO_GROUP", "KINDS", "SMI_SPECS_GROUP", "SMI_SPLIT_GROUP",
           "ApiError", "FakeKube", "KindInfo", "Obj", "RequestRecord", "merge_patch"]
