"""CGCNN as a tensorframe backbone plugin (entry point ``cgcnn``)."""

from tensorframe_cgcnn.cgcnn import CGCNN, CGCNNConfig, build_cgcnn

__all__ = ["CGCNN", "CGCNNConfig", "build_cgcnn"]
