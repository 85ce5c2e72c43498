"""Label Studio ML backend: Label Studio's tasks, labeling configs and regions translated to
sam2serve prompts, and masks / tracks translated back to Label Studio results.

Layer: use case, above `video` and `image` (it calls their services; it re-implements
neither); its HTTP routes are `api/label_studio_routes.py`.
"""
