"""ttubule: segmenting T-tubules (and mitochondria, myofibrils) in serial-block-face EM volumes of heart muscle."""
