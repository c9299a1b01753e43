"""Graph construction: neighbour lists (vesin), triplets (torch) and batching."""

from tensorframe.graph.collate import build_graph, edge_geometry
from tensorframe.graph.neighbors import NeighborList, neighbor_list
from tensorframe.graph.triplets import build_triplets

__all__ = ["NeighborList", "build_graph", "build_triplets", "edge_geometry", "neighbor_list"]
