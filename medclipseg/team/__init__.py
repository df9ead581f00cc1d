"""A team on one project: who may do what (``access``)."""
