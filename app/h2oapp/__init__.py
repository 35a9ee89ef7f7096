"""Helpers of the Streamlit app (``streamlit run app/main.py``).

- :mod:`h2oapp.cached`: ``st.cache_data`` / ``st.cache_resource`` wrappers around h2osim,
  keyed on the trace file (path, mtime, size), the policy and its parameters.
- :mod:`h2oapp.controls`: widgets shared by several pages (trace picker and upload,
  policy and replay-option pickers read from the policy registry).
- :mod:`h2oapp.figures`: pure matplotlib figures and HTML snippets (no Streamlit).

Pages in ``app/views/`` stay thin: they lay out widgets and call these.
"""
