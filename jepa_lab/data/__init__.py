"""Datasets: the official files of Fashion-MNIST and CIFAR-10, generated synthetic data, and the
seeds every random draw derives from. Everything lives on the device as uint8."""
