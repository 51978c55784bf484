"""Training-data preparation: hard-negative mining, the margin filter and format converters.

Entry points: ``python -m reasoning_embed.mine``, ``python -m reasoning_embed.filter``,
``python -m reasoning_embed.convert``. Library: ``mining.mine.mine_file``, ``mining.margin_filter.filter_file``,
``mining.convert.convert``, ``mining.offline.mine_offline_corpus``, ``mining.reference.load_reference``.
"""
