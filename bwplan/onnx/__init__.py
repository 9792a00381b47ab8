"""ONNX import: an ONNX model file becomes bwplan's flat AST plus the model's weights.

    read.py     load the file with the `onnx` package (an optional extra), check it, and
                infer shapes with the input shapes fixed; the only place onnx's own
                exceptions are translated
    fold.py     evaluate what is constant at import: initializers, Constant nodes and the
                shape subgraphs (Shape, Gather, Unsqueeze, Concat, ...) that feed Reshape
    table.py    one row per ONNX op type: the bwplan op, its attributes, which inputs are
                parameters
    to_ast.py   the walk over the graph that applies the rows, names layers and
                parameters, attaches a loss, and collects every unsupported node
    importer.py the entry point, `import_onnx`

Nothing here imports onnx at module level, so the core install stays light.
"""
