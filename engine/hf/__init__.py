"""Every place where the engine leans on transformers internals, one small module per concern.

When a transformers release changes one of these behaviours, the fix belongs in one file here:

- ``cache``    - the cache object that attention layers call (``update``) and the keyword it is passed by.
- ``layers``   - finding a family's modeling classes and building a decoder layer, rotary embedding and norm.
- ``masks``    - the attention-mask form the SDPA attention path accepts, and selecting that path.
- ``alibi``    - ALiBi slopes and the bias / mask forms BLOOM's and Falcon-RW's attention take.
- ``experts``  - fusing a mixture-of-experts block's per-expert checkpoint tensors into the layer's layout.
- ``gguf``     - loading a GGUF file through ``from_pretrained(gguf_file=...)``; its model type from the header.
- ``sampling`` - the logits processors used for sampling and repetition penalties.
"""
