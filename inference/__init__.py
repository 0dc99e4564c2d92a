"""Using an exported model: the model file (``export``), streamed separation (``separate``, ``streaming``)
and its evaluation (``evaluate``).  Imports nothing from ``train`` nor the loaders."""
