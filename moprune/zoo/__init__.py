"""Models: the CIFAR ResNets (published weights), VGG, the digits CNN, torchvision by name."""
