"""The Gradio annotation app: layout, handlers, API and rendering."""
