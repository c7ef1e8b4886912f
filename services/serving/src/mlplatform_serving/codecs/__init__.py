"""The wire formats of the prediction routes, one module each, decode and encode side by side.

``decode`` turns a body into a validated float64 matrix (or says what is wrong with it, naming
the field); ``encode`` turns a batch's answers into a body. What they share (the number
checks, parsing JSON text) is in ``common``. No FastAPI in here.
"""
