"""The front end: the spec reader (``spec.py``) and its lowering to the graph (``graph.py``)."""
