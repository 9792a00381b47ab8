"""Caffe .prototxt import: protobuf text, Caffe's net records, an emulation of Caffe's
`Net::Init` decisions, and the mapping of a Caffe net to bwplan's flat AST."""
