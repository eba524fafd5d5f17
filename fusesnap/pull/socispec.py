"""The names of a SOCI index (soci-snapshotter's): media types and annotations.

A SOCI index is an OCI image manifest whose ``layers`` are zTOC blobs (media type
``application/octet-stream``), each annotated with the image layer it indexes and that
layer's media type. A v2 index has no subject: the image manifest names it
(``com.amazon.soci.index-digest``), and an image index lists it beside the manifest it
belongs to (``com.amazon.soci.image-manifest-digest``). A v1 index has the image
manifest as its ``subject``. `fusesnap.pull.socifind` finds and reads them,
`fusesnap.pull.socipush` builds and pushes v2.
"""

from __future__ import annotations

__all__ = [
    "BUILD_TOOL_ANNOTATION",
    "INDEX_DIGEST_ANNOTATION",
    "LAYER_DIGEST_ANNOTATION",
    "LAYER_MEDIA_TYPE_ANNOTATION",
    "MANIFEST_DIGEST_ANNOTATION",
    "SOCI_INDEX_V1",
    "SOCI_INDEX_V2",
    "ZTOC_MEDIA_TYPE",
]

SOCI_INDEX_V1 = "application/vnd.amazon.soci.index.v1+json"
SOCI_INDEX_V2 = "application/vnd.amazon.soci.index.v2+json"
ZTOC_MEDIA_TYPE = "application/octet-stream"
INDEX_DIGEST_ANNOTATION = "com.amazon.soci.index-digest"
MANIFEST_DIGEST_ANNOTATION = "com.amazon.soci.image-manifest-digest"
LAYER_DIGEST_ANNOTATION = "com.amazon.soci.image-layer-digest"
LAYER_MEDIA_TYPE_ANNOTATION = "com.amazon.soci.image-layer-mediaType"
BUILD_TOOL_ANNOTATION = "com.amazon.soci.build-tool-identifier"
