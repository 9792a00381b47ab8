"""Front ends: .bw and Caffe .prototxt text to the flat AST that `ir.build` turns into a Net."""
