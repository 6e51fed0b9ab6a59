"""Stock-movement explanation with self-reflection (SEP's loop as an environment), on a
seeded synthetic market or a StockNet-layout dataset."""

from turnrl.envs.stock.data import MarketConfig, StockDay, StockNetData, SyntheticMarket, label_of

__all__ = ["MarketConfig", "StockDay", "StockNetData", "SyntheticMarket", "label_of"]
