"""`selfy demo`: train TSN, TSM and SELFY on synthetic motion, export, report.

    from selfy_cli.demo import run_demo, full_settings, quick_settings
    results = run_demo("demo_out", quick_settings())
"""

from selfy_cli.demo.pipeline import run_demo
from selfy_cli.demo.report import format_summary_table
from selfy_cli.demo.settings import DemoSettings, full_settings, quick_settings

__all__ = ["DemoSettings", "format_summary_table", "full_settings", "quick_settings", "run_demo"]
