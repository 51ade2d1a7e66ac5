"""``e2v data build``: prompt-reference-video triplets from raw videos (SkyReels-A2's data pipeline, offline on CPU).

Per video (``e2v.databuild.video``): probe and filter, shot detection, cutting ``4k+1``-frame clips at the training
rate, quality filters, element extraction, background plate, element crops and their embeddings. Over all videos
(``e2v.databuild.build``): identities grouped across clips, every element's reference taken from another clip of the
same identity when there is one, captions, near-duplicate removal, the manifest and the report. Every stage is a
registry component (``e2v registry``) with an offline CPU default and a plug-in point for heavy models.
"""
