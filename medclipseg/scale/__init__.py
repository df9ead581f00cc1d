"""Scale: bulk prediction on a cluster of workers (Ray Data), for ingest and re-scoring.

Optional: ``pip install 'medclipseg[scale]'``. ``medclipseg ingest --engine ray`` and
``medclipseg rescore --engine ray`` use it; the single-process engine (``--engine local``) needs
nothing from here.
"""
