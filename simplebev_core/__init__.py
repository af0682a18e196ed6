"""simplebev_core: the Simple-BEV model, its geometry and configuration (torch + numpy only)."""
from .config import ConfigError, SimpleBevConfig, load_config
from .lift import LiftTable
from .model import BevOutput, Segnet, build_model

__all__ = ["BevOutput", "ConfigError", "LiftTable", "Segnet", "SimpleBevConfig", "build_model",
           "load_config"]
