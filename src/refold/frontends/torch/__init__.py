"""The torch frontend: torch.export capture and import, GraphModule export, ATen raising and lowering."""
