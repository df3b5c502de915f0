"""Transfer Learning Studio's engine: data, models, training, runs. Never imports Streamlit."""

__version__ = "0.1.0"
