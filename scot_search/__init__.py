"""Search your own gallery with a SCOT model: a faiss index, the `scot-search` CLI and a Gradio web demo.

Needs the `search` extra (faiss); the web demo also needs Gradio (`web` extra).
"""

from .index import GalleryIndex, GalleryItem, build_gallery_index, list_dataset_images, list_image_folder
from .search import GallerySearcher, SearchHit, SearchResult

__all__ = [
    "GalleryIndex",
    "GalleryItem",
    "GallerySearcher",
    "SearchHit",
    "SearchResult",
    "build_gallery_index",
    "list_dataset_images",
    "list_image_folder",
]
