"""The Open Inference Protocol (KServe v2, as Triton speaks it): its tensor codec (tensors.py) and the HTTP
binary-tensor extension (binary.py), both pure functions over numpy and bytes; the servicers sit on top."""
