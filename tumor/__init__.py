"""Brain-tumour MRI demo library: classifier, segmenter, overlays, reports.

Never imports Streamlit; usable from scripts, CLIs and tests.
"""

from tumor.errors import InputError, TumorError, WeightsError

__all__ = ["InputError", "TumorError", "WeightsError"]
