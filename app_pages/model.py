"""Step 3: pick a pretrained model from the curated catalog."""

from __future__ import annotations

import streamlit as st

from tl_core.errors import ModelUnavailableError
from tl_core.models import catalog
from tl_ui.headstart import head_start_panel, recommend_panel
from tl_ui.models import model_info
from tl_ui.session import get_store, project_with_data
from tl_ui.text import literal

BADGES = {
    "ready": ":green[:material/offline_pin: ready offline]",
    "downloaded": ":green[:material/offline_pin: downloaded]",
    "needs download": ":blue[:material/cloud_download: downloads on first use]",
}


def page() -> None:
    project, manifest = project_with_data()
    if project is None or manifest is None:
        return
    st.markdown(
        "Each model already learned to see on ImageNet's 1.3 million photos. Yours will reuse "
        "that knowledge and learn your classes on top."
    )
    specs = catalog.visible_specs()
    status = {s.key: catalog.weights_status(s) for s in specs}
    keys = [s.key for s in specs]
    saved = project.typed_settings.model
    current = saved or catalog.DEFAULT_MODEL
    choice = st.radio(
        "Model",
        keys,
        index=keys.index(current) if current in keys else 0,
        format_func=lambda k: f"{catalog.get_spec(k).title} · {BADGES[status[k]]}",
        captions=[s.description for s in specs],
        key="model_choice",
    )
    if choice != saved:
        get_store().update_settings(project.id, model=choice)
    spec = catalog.get_spec(choice)

    if status[choice] == "needs download":
        st.warning(
            f"{spec.title} is not on this computer yet: it needs a one-time download of "
            f"about {spec.download_mb} MB."
        )
        if st.button("Download now", key="download"):
            with st.spinner(f"Downloading {spec.title}…"):
                try:
                    catalog.download_weights(spec)
                except ModelUnavailableError as exc:
                    st.error(literal(exc))
                else:
                    st.success("Downloaded: it is ready offline from now on.")

    info = model_info(choice, len(manifest.classes))
    cfg = info.data_config
    size = cfg["input_size"]
    with st.container(border=True):
        st.markdown(f"**{spec.title}** (`{spec.timm_name}`)")
        c1, c2, c3 = st.columns(3)
        c1.metric(
            f"Parameters (with your {len(manifest.classes)}-class head)",
            f"{info.total_params / 1e6:.1f} M",
        )
        c2.metric("Input size", f"{size[1]}×{size[2]} px")
        c3.metric("Layer groups", info.n_backbone)
        st.caption(
            f"Images are resized ({cfg['interpolation']}) and normalised with mean "
            f"{tuple(round(v, 3) for v in cfg['mean'])} and std "
            f"{tuple(round(v, 3) for v in cfg['std'])}, exactly as the model was trained — "
            "read from the model's own configuration."
        )
    if status[choice] != "needs download":
        head_start_panel(project, manifest, choice)
    recommend_panel(project, manifest)
    st.page_link("app_pages/train.py", label="Next: train", icon=":material/arrow_forward:")


page()
