"""Everything that imports rclpy lives here, and nothing else does."""
