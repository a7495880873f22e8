"""In-loop metrics: FID (pytorch-fid's network), face rate (dlib), classifier accuracy."""
